from p2p.cli import main

raise SystemExit(main())
