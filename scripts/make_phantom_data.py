"""Write the phantom chest X-ray world.

``python scripts/make_phantom_data.py --out DIR --studies N --seed S [--workers W]``
"""

from eclip_monai.data.phantom.cli import main

if __name__ == "__main__":
    main()
