from pipeline.evaluate.stage import main

main()
