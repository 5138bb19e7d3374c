from p2p_copy.cli import main

raise SystemExit(main())
