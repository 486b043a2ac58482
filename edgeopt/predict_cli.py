"""`edgeopt predict RELEASE IMAGE...` (filled in by the registry work)."""
def add_arguments(p):
    p.add_argument("release")
    p.add_argument("images", nargs="*")

def main(args):
    raise SystemExit("predict: not implemented yet")
