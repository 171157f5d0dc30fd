"""Everything is declared in setup.cfg; this file only fixes one gap of setuptools.

setuptools' editable install installs data files when the distribution answers ``has_data()``
-- a method setuptools' own Distribution does not have (it has ``has_data_files``), so
``pip install -e .`` placed no man page while ``pip install .`` did. This Distribution answers
it, and an editable install places share/man/man1/gaia-cas.1 and gaia-cas-nightly.1 as well.
"""

from setuptools import setup
from setuptools.dist import Distribution


class ManPagesToo(Distribution):
    def has_data(self) -> bool:
        return self.has_data_files()


setup(distclass=ManPagesToo)
