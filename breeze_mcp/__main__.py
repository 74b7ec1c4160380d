from breeze_mcp.cli import main

raise SystemExit(main())
