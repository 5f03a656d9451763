# Copyright 2022 MosaicML Examples authors
# SPDX-License-Identifier: Apache-2.0
