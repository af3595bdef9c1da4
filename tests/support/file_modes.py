"""Running a command as a user without root's file-mode override: tests of files this user may
not open or write (a lock of another user's, a directory of mode 555)."""
import os
import shutil

import pytest


def without_file_override() -> list[str]:
    """A command prefix under which file modes apply: [] when not root; as root, setpriv
    dropping CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so the command
    (still root) obeys file modes as any other user does. Skips the test where neither works."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
