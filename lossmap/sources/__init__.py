"""The source behind the total: real lines of the installed library and of user code.

Engine-agnostic. An engine describes *where* to look (`Anchor`: a module, a
qualified name, libcst matchers for the statements that matter, notes built
from the analysis); this package finds those functions by structure in the
installed files and returns plain data (`Step`, `CallSite`, `SourceLine`) that
renderers print without importing anything.

Nothing here uses hard-coded line numbers or regular expressions on source
text. A function is found by its structure (class -> method, or a module-level
function, following `<locals>` for nested definitions); statements are found
with libcst matchers. When a library version moves or renames something, the
step says which anchor or statement was not found (`found=False`, `missing`)
instead of showing wrong lines.

One module per thing read:

- `index`: files (read once, indexed with `ast`) and one definition parsed with
  libcst and real line numbers (`definition`, `Definition`);
- `highlight`: statements found by matchers in a definition (`Stmt`, `locate`, `Step`);
- `anchors`: the engine's anchors, located for this model (`Anchor`, `walkthrough`);
- `call_sites`: each term's origin in the user's code (`CallSite`, `user_call_sites`).
"""
from lossmap.sources.anchors import Anchor, failed_step, walkthrough
from lossmap.sources.call_sites import CallSite, user_call_sites
from lossmap.sources.highlight import Note, SourceLine, Step, Stmt, as_stmt, locate, locate_in_file
from lossmap.sources.index import Definition, NotFound, definition, display_path, module_file

__all__ = [
    "Anchor", "CallSite", "Definition", "Note", "NotFound", "SourceLine", "Step", "Stmt", "as_stmt",
    "definition", "display_path", "failed_step", "locate", "locate_in_file", "module_file",
    "user_call_sites", "walkthrough",
]
