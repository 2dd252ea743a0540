"""What pyproject.toml cannot say: where the wheel's data folders come from.

The repository keeps the model zoo and the schema at its top (zoo/<model>/,
proto/caffe.proto), where README.md, the tests and Caffe users look for them.
The wheel carries them inside the package, as protonet/_zoo/ and
protonet/_schema/, found by protonet.zoo and protonet.schema_path() whether
protonet runs from a wheel or from this checkout (an editable install).
pyproject's package discovery cannot map a package onto another folder, so
the package list lives here.  zoo/generate.py, the script that wrote the zoo,
stays in the sdist only.
"""

import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class _BuildPy(build_py):
    """build_py that ships zoo/'s prototxts and READMEs, not its script."""

    def find_package_modules(self, package, package_dir):
        if package.startswith("protonet._zoo"):
            return []
        return super().find_package_modules(package, package_dir)


# A model folder whose name is a Python identifier looks like a package to
# setuptools, which wants it listed; the others (squeezenet_v1.0) ride on
# protonet._zoo's globs.
_MODEL_PACKAGES = [f"protonet._zoo.{name}" for name in sorted(os.listdir("zoo"))
                   if name.isidentifier()
                   and os.path.isfile(f"zoo/{name}/solver.prototxt")]

setup(
    packages=find_packages(include=["protonet", "protonet.*"])
    + ["protonet._zoo", "protonet._schema"] + _MODEL_PACKAGES,
    package_dir={"protonet._zoo": "zoo", "protonet._schema": "proto"},
    package_data={"protonet._zoo": ["*/*.prototxt", "*/README.md"],
                  "protonet._schema": ["caffe.proto"]},
    exclude_package_data={"protonet._schema": ["regenerate.sh"]},
    cmdclass={"build_py": _BuildPy},
)
