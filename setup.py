"""Packaging for the ViaBTC exchange server port."""

import os

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
    include_package_data=True,
    package_data={"": ["conf/*.json", "*.sql"]},
    install_requires=read_requirements("requirements.txt"),
    extras_require={"test": read_requirements("requirements-test.txt")},
    cmdclass={"install": Install, "develop": Develop},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
    ],
)
