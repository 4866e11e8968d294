"""Packaging for the ViaBTC exchange server port."""

import glob
import os
import sys

from setuptools import find_packages, setup
from setuptools.command.develop import develop
from setuptools.command.install import install

HERE = os.path.dirname(os.path.abspath(__file__))


def read_requirements(name):
    with open(os.path.join(HERE, name)) as f:
        lines = (line.split("#", 1)[0].strip() for line in f)
        return [line for line in lines if line and not line.startswith("-r")]


def refresh_plugin_cache():
    """Rebuild twisted's dropin.cache so twistd sees the daemons at once."""
    try:
        from twisted.plugin import IPlugin, getPlugins
        list(getPlugins(IPlugin))
    except Exception:  # the cache is rebuilt on first use anyway
        pass


class Install(install):
    def run(self):
        install.run(self)
        refresh_plugin_cache()


class Develop(develop):
    def run(self):
        develop.run(self)
        refresh_plugin_cache()


def compiled_sources():
    """The modules compiled with Cython: each one with a .pxd beside it, which declares the
    types of its classes.  The .py stays the source: it runs as it is wherever nothing was
    compiled (no Cython, no C compiler, or VIABTC_PURE_PYTHON set when installing)."""
    return sorted(path[:-len(".pxd")] + ".py" for path in glob.glob("*/*.pxd", root_dir=HERE))


def extensions():
    if os.environ.get("VIABTC_PURE_PYTHON"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("setup.py: Cython is not installed: the matching modules stay pure Python",
              file=sys.stderr)
        return []
    built = cythonize(compiled_sources(), build_dir="build/cython", quiet=True,
                      compiler_directives={"language_level": 3, "annotation_typing": False})
    for ext in built:
        ext.optional = True     # a failed C build leaves that module pure Python, with a warning
        ext.include_dirs.append(HERE)       # the C headers they share (utils/*.h)
    return built


MODULES = ["network", "utils", "matchengine", "marketprice", "readhistory",
           "accesshttp", "accessws", "alertcenter", "exchange"]

setup(
    name="viabtc-exchange",
    version="0.1.0",
    description="Trading backend of a cryptocurrency exchange: a Twisted port "
                "of the ViaBTC Exchange Server",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    package_dir={"": "."},
    packages=find_packages(include=[m + "*" for m in MODULES]) + ["twisted.plugins"],
    ext_modules=extensions(),
    include_package_data=True,
    package_data={"": ["conf/*.json", "*.sql", "*.h"]},
    install_requires=read_requirements("requirements.txt"),
    extras_require={"test": read_requirements("requirements-test.txt")},
    cmdclass={"install": Install, "develop": Develop},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
    ],
)
