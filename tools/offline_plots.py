"""Write ``.dvc/plots_offline.html``: DVC's plots page with vega, vega-lite and vega-embed inside, no CDN.

    pip install vl-convert-python && python tools/offline_plots.py

``dvc plots show`` fills an HTML template with one ``<div>`` per chart, each calling
``vegaEmbed(...)``; DVC's default template loads vega from a CDN (``{scripts}``), so
offline every vega chart is blank. ``.dvc/config`` sets ``plots.html_template`` to the
file this writes: the same page, with the three libraries inlined as one classic script
(the bundle ``vl_convert.javascript_bundle()`` makes from the versions vl-convert-python
ships, which defines ``vegaEmbed``, ``vega`` and ``vegaLite`` as globals) and no
``{scripts}`` placeholder, so DVC adds no CDN tag. ``tests/test_pipeline.py`` checks
that every chart of ``dvc plots show`` is drawn by headless Chromium with the network
off. Only this tool needs vl-convert-python; the project does not.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / ".dvc" / "plots_offline.html"
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <title>DVC Plot</title>
    <!-- Written by tools/offline_plots.py: vega {vega}, vega-lite {vega_lite}, vega-embed {embed} (BSD-3-Clause,
         https://github.com/vega), bundled with their dependencies by vl-convert-python {vl_convert}
         (vl_convert.javascript_bundle). Inlined so that `dvc plots show` draws its charts with no network. -->
    <script type="text/javascript">
{bundle}
    </script>
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def page() -> str:
    """The template's text."""
    from importlib.metadata import version

    import vl_convert

    bundle = vl_convert.javascript_bundle()
    for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}"):
        if placeholder in bundle:
            raise RuntimeError(f"the bundle contains DVC's placeholder {placeholder}; it cannot be inlined as is")
    bundle = bundle.replace("</script", "<\\/script")  # the HTML parser would end the script there
    return PAGE.format(bundle=bundle, vega=vl_convert.get_vega_version(),
                       vega_lite=vl_convert.get_vegalite_versions()[-1], embed=vl_convert.get_vega_embed_version(),
                       vl_convert=version("vl-convert-python"))


def main() -> None:
    """Write the template (``--out``, default ``.dvc/plots_offline.html``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TEMPLATE, help="template file to write")
    args = parser.parse_args()
    args.out.write_text(page())
    print(f"{args.out}: {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
