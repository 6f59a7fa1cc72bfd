"""`python -m equinet` runs the same command line as the `equinet` console script."""

from equinet.cli import main

if __name__ == "__main__":
    main()
