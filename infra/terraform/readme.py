"""Keeps infra/terraform/aws/README.md's tables of inputs and outputs in step with the module.

    python readme.py           rewrites the tables (between the `<!-- BEGIN inputs -->`,
                               `<!-- END inputs -->` and the outputs' markers)
    python readme.py --check   exits 1 if the README is not what it would write

Names and descriptions come from python-hcl2; types and defaults are the source's own text.
test/test_readme.py runs the check.
"""

import re
import sys
from pathlib import Path

import hcl2

MODULE = Path(__file__).resolve().parent / "aws"
README = MODULE / "README.md"


def attribute_text(lines, name):
    """The source text of attribute `name` at the block's top level (two spaces in), with its
    brackets balanced over lines, whitespace collapsed; None if absent."""
    for index, line in enumerate(lines):
        match = re.match(rf"^  {name}\s*=\s*(.*)$", line)
        if not match:
            continue
        text = match.group(1)
        depth = text.count("{") + text.count("[") + text.count("(") - text.count("}") - text.count("]") - text.count(")")
        following = index + 1
        while depth > 0:
            part = lines[following].strip()
            text += " " + part
            depth += part.count("{") + part.count("[") + part.count("(") - part.count("}") - part.count("]") - part.count(")")
            following += 1
        text = re.sub(r"\s+", " ", text)
        text = re.sub(r"([{\[(]) ", r"\1", text)
        return re.sub(r" ([}\])])", r"\1", text)
    return None


def blocks(kind, path):
    source = path.read_text().splitlines()
    with open(path) as file:
        document = hcl2.load(file)
    for block in document.get(kind, []):
        for name, body in block.items():
            start = source.index(f'{kind} "{name}" {{')
            end = source.index("}", start)
            yield name, body, source[start:end]


def cell(text):
    return text.replace("|", "\\|")


def inputs_table():
    rows = ["| Name | Description | Type | Default | Required |", "|---|---|---|---|:-:|"]
    for name, body, lines in blocks("variable", MODULE / "variables.tf"):
        default = attribute_text(lines, "default")
        rows.append(
            "| `{}` | {} | `{}` | {} | {} |".format(
                name,
                cell(body["description"][0].replace("\\\"", "\"")),
                cell(attribute_text(lines, "type")),
                "" if default is None else f"`{cell(default)}`",
                "yes" if default is None else "no",
            )
        )
    return "\n".join(rows)


def outputs_table():
    rows = ["| Name | Description |", "|---|---|"]
    for name, body, _ in blocks("output", MODULE / "outputs.tf"):
        rows.append(f"| `{name}` | {cell(body['description'][0])} |")
    return "\n".join(rows)


def render(text):
    for section, table in (("inputs", inputs_table()), ("outputs", outputs_table())):
        begin, end = f"<!-- BEGIN {section} -->", f"<!-- END {section} -->"
        if begin not in text or end not in text:
            raise SystemExit(f"{README}: the markers {begin} and {end} are missing")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{table}\n{end}{tail}"
    return text


def main():
    current = README.read_text()
    wanted = render(current)
    if "--check" in sys.argv[1:]:
        if current != wanted:
            print(f"{README} is out of step with the module: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
