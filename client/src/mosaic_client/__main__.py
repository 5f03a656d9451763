import sys

from mosaic_client.cli import main

sys.exit(main())
