"""`python -m mosaic_serving.mosaicml_import deployment.yaml --output model_repository/NAME`."""

import sys

from mosaic_serving.mosaicml_import.cli import main

sys.exit(main())
