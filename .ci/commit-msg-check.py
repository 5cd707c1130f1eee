#!/usr/bin/env python3
"""commit-msg hook: the first line follows Conventional Commits, `type(scope)!: subject`."""
import re
import sys

TYPES = "feat|fix|perf|docs|test|refactor|build|ci|chore|style|revert"
PATTERN = re.compile(rf"^({TYPES})(\([\w./-]+\))?!?: \S.*")


def ok(first_line: str) -> bool:
    return bool(PATTERN.match(first_line)) or first_line.startswith(("Merge ", "fixup!", "squash!"))


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        line = f.readline().rstrip("\n")
    if not ok(line):
        sys.exit(f"commit message must follow Conventional Commits ({TYPES}): {line!r}")
