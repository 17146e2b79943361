"""Build hook for the optional C speedups (everything else is declared in setup.cfg).

``twisted_pop3ng.wire._speedups`` is optional: where it cannot be compiled (no C compiler, no Python
headers) the install goes on and ``twisted_pop3ng.wire`` uses its pure-Python versions.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("twisted_pop3ng.wire._speedups", ["twisted_pop3ng/wire/_speedups.c"],
                             optional=True)])
