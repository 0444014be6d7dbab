from chainlens_ops.entry import main

main()
