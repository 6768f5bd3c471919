"""The Jinja2 templates of prompts and answers, shipped inside the package as prefopt.data_templates."""
