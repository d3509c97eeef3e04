"""What the pages share, by concern; none of it is a page (Streamlit makes a page of every file
directly in pages/, never of a sub-folder's).

- ``session``: one browser session (its owner, defaults, data split, run on screen, sidebar);
- ``text``: user text made safe for Markdown and charts; ``charts``: charts that fit a projector;
- ``runs``: this person's runs and their live state; ``tasks``: background work a page follows;
- ``models``: the Model page's choice, a session's own models, pickers for a model and an image;
- ``links``: classroom links and locks; ``multitask``: multi-task data and models on the pages;
- ``choose_backbone``: ranking backbones before training.
"""
