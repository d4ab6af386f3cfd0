from clearml_standin.server import main

main()
