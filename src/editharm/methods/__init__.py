"""Edit methods. Importing this package registers each one (see `editharm.registry`)."""
from editharm.methods import ft  # noqa: F401
from editharm.methods import kn, memit, mend, rome  # noqa: F401
