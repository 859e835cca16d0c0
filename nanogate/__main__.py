from nanogate.cli.main import main

main()
