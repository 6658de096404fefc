"""irctest's own ngIRCd controller, with servers left running by setUp skips stopped.

See ``StopsLeftovers`` in ``chatsvc_controller.py``; nothing else differs from
``irctest.controllers.ngircd``.
"""

from __future__ import annotations

from irctest.controllers.ngircd import NgircdController as _Upstream

from tests.irctest.chatsvc_controller import StopsLeftovers


class NgircdController(StopsLeftovers, _Upstream):
    pass


def get_irctest_controller_class() -> type[NgircdController]:
    return NgircdController
