"""The reproduction layer: the paper's published numbers (`numbers`), its tables and figures as data and
the runs each needs per profile (`items`), our finished runs read back beside the paper's numbers
(`tabulation`) and written as Markdown (`markdown`), the figures (`figures`), one notebook's work as one
call (`reproduce`, in `reproduction`) and the notebooks that regenerate all of it (`regenerate`). Nothing
in the method imports it.
"""


def __getattr__(name: str):
    """`from mkdlib.paper import reproduce`, imported on first use (it pulls in torch and the runner)."""
    if name in ("reproduce", "Reproduction"):
        from mkdlib.paper import reproduction

        return getattr(reproduction, name)
    raise AttributeError(f"module 'mkdlib.paper' has no attribute {name!r}")
