"""The site's pages, in reading order: one module per question (SLUG, NAV, TITLE, ANSWER, build(page))."""
from sitegen.pages import (add_loss_kl, backends, engines, input_gradients, loss_weights, model_losses, optimizers,
                           physics_terms)

PAGES = [add_loss_kl, model_losses, physics_terms, input_gradients, optimizers, loss_weights, engines, backends]
