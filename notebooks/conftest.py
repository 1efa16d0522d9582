"""`pytest --nbmake notebooks/`: nbmake's items are not pytest Functions, and pytest-embedded's
`pytest_runtest_call` reads `item.funcargs` on every item; give notebook items an empty one."""

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_itemcollected(item):
    if not hasattr(item, "funcargs"):
        item.funcargs = {}
