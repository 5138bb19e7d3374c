from p2p_copy.cli import console_main

console_main()
