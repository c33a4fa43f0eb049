# Test stand-in for the parts of Buildroot that buildroot/package/gatelet/gatelet.mk uses
# (buildroot/check-offline-build.sh runs it with GNU make). It includes the real gatelet.mk and
# runs its own variables and command blocks, instead of Buildroot's package infrastructure:
#   make -f buildroot/test/br-stand-in.mk BR2_EXTERNAL_GATELET_PATH=<tree> SRC=<extracted tarball> \
#        TARGET_DIR=<fake target> RUSTC_TARGET_NAME=<triple> [BR2_PACKAGE_NFTABLES=y] TARGET
# TARGET: show (the variables), install (GATELET_INSTALL_TARGET_CMDS then
# GATELET_INSTALL_INIT_SYSTEMD, with $(@D) = SRC, as Buildroot runs them).

# Buildroot's helpers (support/misc/utils.mk, package/pkg-utils.mk), same meaning.
qstrip = $(strip $(subst ",,$(1)))
define sep


endef
INSTALL = install
KCONFIG_ENABLE_OPT = echo "kconfig: enable $(1)"
# What inner-generic-package sets for an external package.
GATELET_PKGDIR = $(BR2_EXTERNAL_GATELET_PATH)/package/gatelet
# The package infrastructures are Buildroot's; nothing to generate here.
cargo-package =
generic-package =

include $(BR2_EXTERNAL_GATELET_PATH)/package/gatelet/gatelet.mk

.PHONY: show install
show:
	@echo 'GATELET_VERSION=$(GATELET_VERSION)'
	@echo 'GATELET_SOURCE=$(GATELET_SOURCE)'
	@echo 'GATELET_SITE=$(GATELET_SITE)'
	@echo 'GATELET_SITE_METHOD=$(GATELET_SITE_METHOD)'
	@echo 'GATELET_LICENSE=$(GATELET_LICENSE)'
	@echo 'GATELET_LICENSE_FILES=$(GATELET_LICENSE_FILES)'
	@echo 'GATELET_CARGO_BUILD_OPTS=$(GATELET_CARGO_BUILD_OPTS)'

install: $(SRC)/.stamp_target_installed
$(SRC)/.stamp_target_installed:
	$(GATELET_INSTALL_TARGET_CMDS)
	$(GATELET_INSTALL_INIT_SYSTEMD)
