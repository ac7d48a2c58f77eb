"""FedAvg client update (McMahan et al., AISTATS 2017): plain local SGD, see :class:`clients.base.Client`."""

from clients.base import Client

CLIENT = Client
