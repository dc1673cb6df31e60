"""The kernel's own tests, one pytest test per case in every cell that runs them:
kselftest targets (matrix `suites.kselftest`) and KUnit suites run at boot (kernels with
CONFIG_KUNIT=y, or matrix `suites.kunit`). See docs/kselftest.md.

    pytest testcases -k kselftest            # every kselftest case of the matrix
    pytest testcases -m kunit -k cmdline     # the KUnit cmdline suite's cases
"""

from kmatrix import KernelTests

kselftest = KernelTests("kselftest")
kunit = KernelTests("kunit")
