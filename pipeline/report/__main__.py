from pipeline.report.stage import main

main()
