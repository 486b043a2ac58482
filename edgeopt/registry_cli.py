"""`edgeopt registry ...` (filled in by the registry work)."""
def add_arguments(p):
    p.add_argument("action", nargs="?", default="list")

def main(args):
    raise SystemExit("registry: not implemented yet")
