"""The module's README lists exactly its inputs and outputs, as readme.py writes them."""

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import readme  # noqa: E402


class ReadmeTest(unittest.TestCase):
    maxDiff = None

    def test_readme_tables_are_the_modules_inputs_and_outputs(self):
        current = readme.README.read_text()
        self.assertEqual(
            current, readme.render(current), "run `python infra/terraform/readme.py` and commit the README"
        )

    def test_every_variable_and_output_is_described(self):
        for kind, path in (("variable", "variables.tf"), ("output", "outputs.tf")):
            for name, body, _ in readme.blocks(kind, readme.MODULE / path):
                with self.subTest(kind=kind, name=name):
                    self.assertTrue(body.get("description", [""])[0].strip(), f"{kind} {name} has no description")

    def test_every_variable_is_typed(self):
        for name, body, _ in readme.blocks("variable", readme.MODULE / "variables.tf"):
            with self.subTest(name=name):
                self.assertIn("type", body, f"variable {name} has no type")


if __name__ == "__main__":
    unittest.main()
