"""The structure drawing of the package: each folder a room, its modules, the imports between rooms.

    python tools/structure.py                 # text, for lossmap/ next to this folder
    python tools/structure.py --dot rooms.dot # also a Graphviz file: dot -Tsvg rooms.dot -o rooms.svg

A room is one folder (package) of modules; nested packages are rooms of their
own, so an engine split into its own package shows up as one room. Imports
are read with `ast`, those inside functions too (marked "lazy": the
dependency is real, only deferred). Only imports between rooms of the
package are drawn.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ROOT = os.path.join(os.path.dirname(HERE), "lossmap")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 60  # the size rule (tests/test_structure.py)


@dataclass
class Module:
    name: str  # dotted, e.g. "lossmap.sources.index"
    room: str  # folder relative to the package's parent, e.g. "lossmap/sources"
    file: str  # file name within the room
    lines: int
    longest: tuple  # (lines, function name) of its longest function, (0, "") if none
    imports: list = field(default_factory=list)  # [(dotted target, lazy)]


def read_package(root: str) -> dict:
    """{dotted name: Module} for every module under `root` (a package folder)."""
    base = os.path.dirname(os.path.abspath(root))
    modules = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for fname in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, fname)
            parts = os.path.relpath(path, base)[:-3].split(os.sep)
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
            tree = ast.parse(text, filename=path)
            room = os.path.relpath(folder, base).replace(os.sep, "/")
            modules[name] = Module(name, room, fname, len(text.splitlines()), _longest(tree),
                                   list(_imports(tree, name, is_package)))
    return modules


def _longest(tree) -> tuple:
    best = (0, "")
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            best = max(best, (node.end_lineno - first + 1, node.name))
    return best


def _imports(tree, name: str, is_package: bool):
    """(dotted target, lazy) of each import; `from a import b` gives a.b (resolved later to a when b is no module)."""
    package = name if is_package else name.rpartition(".")[0]
    lazy_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        lazy = id(node) in lazy_nodes
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, lazy
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                yield f"{module}.{alias.name}", lazy


def _resolve(target: str, modules: dict):
    """The module of the package that `target` names (its longest known prefix), or None."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules:
            return modules[".".join(parts[:i])]
    return None


def room_edges(modules: dict) -> dict:
    """{(from room, to room): {importing module file: lazy only}} for imports between different rooms."""
    edges = defaultdict(dict)
    for mod in modules.values():
        for target, lazy in mod.imports:
            hit = _resolve(target, modules)
            if hit is None or hit.room == mod.room:
                continue
            files = edges[(mod.room, hit.room)]
            files[mod.file] = files.get(mod.file, True) and lazy
    return dict(edges)


def rooms(modules: dict) -> dict:
    """{room: [Module]}, rooms and modules sorted by name."""
    out = defaultdict(list)
    for mod in sorted(modules.values(), key=lambda m: (m.room, m.file)):
        out[mod.room].append(mod)
    return dict(sorted(out.items()))


def _flag(mod: Module) -> str:
    over = []
    if mod.lines > MAX_MODULE_LINES:
        over.append("module over %d" % MAX_MODULE_LINES)
    if mod.longest[0] > MAX_FUNCTION_LINES:
        over.append("a function over %d" % MAX_FUNCTION_LINES)
    return "  <- " + ", ".join(over) if over else ""


def as_text(modules: dict) -> str:
    lines = []
    for room, mods in rooms(modules).items():
        lines.append(f"[{room}]  {len(mods)} modules, {sum(m.lines for m in mods)} lines")
        for mod in mods:
            longest = f"longest def {mod.longest[1]} {mod.longest[0]}" if mod.longest[0] else ""
            lines.append(f"    {mod.file:<26} {mod.lines:>5}   {longest}{_flag(mod)}")
        lines.append("")
    lines.append("Imports between rooms (importer -> imported: importing modules; * only inside functions):")
    for (a, b), files in sorted(room_edges(modules).items()):
        who = ", ".join(f + ("*" if lazy else "") for f, lazy in sorted(files.items()))
        lines.append(f"    {a} -> {b}: {who}")
    return "\n".join(lines) + "\n"


def _dot_id(room: str) -> str:
    return '"' + room.replace('"', '\\"') + '"'


def as_dot(modules: dict) -> str:
    out = ["digraph rooms {", "  rankdir=LR;", '  node [shape=box, fontname="monospace", fontsize=10];']
    for room, mods in rooms(modules).items():
        rows = "".join(f"{m.file}  {m.lines}{' !' if _flag(m) else ''}\\l" for m in mods)
        total = sum(m.lines for m in mods)
        out.append(f'  {_dot_id(room)} [label="{room}  ({total} lines)\\n\\n{rows}"];')
    for (a, b), files in sorted(room_edges(modules).items()):
        style = "dashed" if all(files.values()) else "solid"
        out.append(f'  {_dot_id(a)} -> {_dot_id(b)} [label="{len(files)}", style={style}];')
    out.append("}")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=DEFAULT_ROOT, help="the package folder (default: lossmap/)")
    parser.add_argument("--dot", metavar="FILE", help="also write the drawing as a Graphviz DOT file")
    args = parser.parse_args(argv)
    modules = read_package(args.root)
    sys.stdout.write(as_text(modules))
    if args.dot:
        with open(args.dot, "w", encoding="utf-8") as fh:
            fh.write(as_dot(modules))
        print(f"wrote {args.dot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
