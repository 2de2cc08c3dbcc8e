"""mkdocs hook: the reference pages' generated parts, from the code (`editharm.reference`)."""
from editharm import reference

GENERATED = {"<!-- generated: config -->": reference.config_markdown,
             "<!-- generated: cli -->": reference.cli_markdown}


def on_page_markdown(markdown, page, config, files):
    for marker, make in GENERATED.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
