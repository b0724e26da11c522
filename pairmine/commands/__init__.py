"""One module per CLI command. Each defines ``command``: options → library call → summary."""
