from operator_server.cli import main

raise SystemExit(main())
