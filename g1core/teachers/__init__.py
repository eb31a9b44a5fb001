"""Teachers: policies backed by real models, used to distil answers and as evaluated baselines."""

from .openai_compat import OpenAICompatPolicy, TeacherError, image_data_url

__all__ = ["OpenAICompatPolicy", "TeacherError", "image_data_url"]
