"""Retrieval-augmented report generation from the command line; see ``eclip_monai.rag.generate`` for options.

    python scripts/generate_reports.py --config configs/report_generation.json --checkpoint model.pt --out DIR
"""

from eclip_monai.rag.generate import main

if __name__ == "__main__":
    raise SystemExit(main())
