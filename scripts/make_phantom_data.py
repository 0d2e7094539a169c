"""Write the phantom chest X-ray world.

``python scripts/make_phantom_data.py --out DIR --studies N --seed S [--workers W]``
``python scripts/make_phantom_data.py --out DIR --full-size --transfer-syntax jpeg2000``: MIMIC-sized films
(~3,000 × 2,500 px, 12 bits), losslessly compressed; see ``--help``.
"""

from eclip_monai.data.phantom.cli import main

if __name__ == "__main__":
    main()
