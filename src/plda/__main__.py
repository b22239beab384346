from plda.cli.main import main

raise SystemExit(main())
