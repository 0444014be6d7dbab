"""The PostgreSQL layer: connections (`connection`) and the binaries wrapper (`binaries`).

Commands and the daemon reach PostgreSQL only through this package.
"""
