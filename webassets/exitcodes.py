"""Exit statuses of the command line, the one list scripts and `webassets --help` rely on."""

__all__ = ["EXIT_OK", "EXIT_ATTENTION", "EXIT_CONFIG", "EXIT_INTERRUPTED", "HELP"]

EXIT_OK = 0  # success; nothing needs attention
EXIT_ATTENTION = 1  # something needs attention (a FAIL, a problem left, a failed conversion)
EXIT_CONFIG = 2  # bad command line or settings
EXIT_INTERRUPTED = 130  # Ctrl-C

HELP = """\
exit status:
  0    success; nothing needs attention
  1    something needs attention: check found a FAIL; fsck or prune left a problem (with
       --dry-run: found something to repair); pregen had a failed conversion; migrate
       could not copy a file (with --dry-run: found something to copy); serve could not
       listen
  2    bad command line or settings (including an unknown --coll)
  130  interrupted (Ctrl-C); pregen and migrate stop after the work running, and resume
       later
"""
