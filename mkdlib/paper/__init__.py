"""The reproduction layer: the paper's published numbers (`numbers`), its tables and figures as data and
the runs each needs per profile (`items`), our finished runs read back beside the paper's numbers
(`tabulation`) and written as Markdown (`markdown`), the figures (`figures`), and the notebooks that
regenerate all of it (`regenerate`). Nothing in the method imports it.
"""
