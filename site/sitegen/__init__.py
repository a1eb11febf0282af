"""The learning site's generator: every page built from models lossmap analyses at build time.

Modules: `claims` (assertions that back the pages' sentences), `code` (source shown as it ran,
with true line numbers), `plots` (SVG line charts), `render` (the pages, the shared stylesheet,
the full reports), `build` (the whole site), and `pages/` (one builder per question).
"""
