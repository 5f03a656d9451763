from mosaic_serving.tiny_models import main

main()
