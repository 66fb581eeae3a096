from lmlab.cli import entry

entry()
