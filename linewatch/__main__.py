from linewatch.service.cli import main

raise SystemExit(main())
