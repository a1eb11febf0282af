"""The learning site, built once per test session (test_site.py and test_site_browser.py share it)."""
import functools
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE = os.path.join(REPO, "site")


def import_sitegen():
    """Import path for site/sitegen (site/ is not a package: `site` is a standard-library module)."""
    if SITE not in sys.path:
        sys.path.insert(0, SITE)
    import sitegen.build

    return sitegen


@functools.lru_cache(maxsize=1)
def built_site():
    """(output folder, manifest) of a full build."""
    import_sitegen()
    from sitegen.build import build

    out = os.path.join(tempfile.mkdtemp(prefix="lossmap-site-"), "site")
    manifest = build(out, log=lambda *args: None)
    return out, manifest


def html_files(out):
    for folder, _, files in os.walk(out):
        for name in sorted(files):
            if name.endswith(".html"):
                yield os.path.join(folder, name)
