################################################################################
#
# gatelet
#
################################################################################

# The source is the release tarball of buildroot/make-release-tarball.sh: the tree of a commit with
# every crate vendored in VENDOR/ and .cargo/config.toml pointing cargo at it, so the download,
# the build and `make legal-info` need no network. Buildroot's cargo download post-process sees
# VENDOR/ and leaves the tarball as it is. Make it in the checkout this tree lives in
# (target/release-tarball/gatelet-<version>.tar.gz), or put a released tarball into
# $(BR2_DL_DIR)/gatelet/ (Buildroot looks there first).
GATELET_VERSION = 0.1.0
GATELET_SOURCE = gatelet-$(GATELET_VERSION).tar.gz
GATELET_SITE = $(BR2_EXTERNAL_GATELET_PATH)/../target/release-tarball
GATELET_SITE_METHOD = file
# gatelet itself; the crates linked into its binaries have permissive licenses of their own,
# each with its text in THIRD-PARTY-LICENSES.txt (third_party/notices.py checks which are allowed).
GATELET_LICENSE = MIT or Apache-2.0, bundled Rust crates: see THIRD-PARTY-LICENSES.txt
GATELET_LICENSE_FILES = LICENSE-MIT LICENSE-APACHE THIRD-PARTY-LICENSES.txt
# With GATELET_OVERRIDE_SRCDIR (local.mk, a checkout instead of the tarball) the build dir has no
# VENDOR/: GATELET_CARGO_FETCH below fetches the crates (needs network once). Build outputs of the
# checkout (cargo target dirs) are not sources: keep them out of the rsync.
GATELET_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude target --exclude 'target-*'

GATELET_PREBUILT_DIR = $(call qstrip,$(BR2_PACKAGE_GATELET_PREBUILT_DIR))
# gatelet-update: the self-updater (docs/self-update.md), a second binary of the companion crate.
GATELET_BINARIES = gatelet-agent gatelet-companion gatelet-update
GATELET_HOOKS_DIR = $(@D)/kernel-hooks

# Both daemons run as this user (systemd/gatelet.sysusers.conf says the same for systemd-sysusers).
define GATELET_USERS
	gatelet -1 gatelet -1 * /var/lib/gatelet - - gatelet edge gateway
endef

define GATELET_PERMISSIONS
	/etc/gatelet d 0750 0 gatelet - - - - -
endef

# The kernel options the daemons need (the full list with reasons: kernel-hooks/gatelet.config,
# which the defconfig fragments in configs/ also pass as a kernel config fragment).
define GATELET_LINUX_CONFIG_FIXUPS
	$(call KCONFIG_ENABLE_OPT,CONFIG_TUN)
	$(call KCONFIG_ENABLE_OPT,CONFIG_PACKET)
	$(call KCONFIG_ENABLE_OPT,CONFIG_UNIX)
	$(call KCONFIG_ENABLE_OPT,CONFIG_INET)
endef

ifeq ($(GATELET_PREBUILT_DIR),)

# Build from source: only the daemons' packages (the tests-hw crate is not a default member anyway).
GATELET_CARGO_BUILD_OPTS = -p gatelet-agent -p gatelet-companion --bins
GATELET_BIN_DIR = $(@D)/target/$(RUSTC_TARGET_NAME)/$(if $(BR2_ENABLE_DEBUG),debug,release)

# The tarball carries VENDOR/ and the source replacement: nothing to fetch. A checkout given as
# GATELET_OVERRIDE_SRCDIR has neither: fetch the crates into Buildroot's cargo home, so the
# --offline build finds them. A pre-build hook, because host-rustc (which provides cargo) is only
# guaranteed to be built by then.
define GATELET_CARGO_FETCH
	if [ ! -d $(@D)/VENDOR ]; then \
		cd $(@D) && $(TARGET_MAKE_ENV) $(PKG_CARGO_ENV) cargo fetch --locked; \
	fi
endef
GATELET_PRE_BUILD_HOOKS += GATELET_CARGO_FETCH

else

GATELET_BIN_DIR = $(GATELET_PREBUILT_DIR)
define GATELET_BUILD_CMDS
	$(foreach b,$(GATELET_BINARIES),test -x $(GATELET_BIN_DIR)/$(b) || \
		{ echo "gatelet: $(GATELET_BIN_DIR)/$(b) missing (BR2_PACKAGE_GATELET_PREBUILT_DIR)"; exit 1; }$(sep))
endef

endif

# A workspace has no single crate to `cargo install`: install the built binaries directly.
define GATELET_INSTALL_TARGET_CMDS
	$(foreach b,$(GATELET_BINARIES),$(INSTALL) -D -m 0755 $(GATELET_BIN_DIR)/$(b) $(TARGET_DIR)/usr/bin/$(b)$(sep))
	$(INSTALL) -D -m 0644 $(GATELET_HOOKS_DIR)/modules-load.d/gatelet.conf \
		$(TARGET_DIR)/usr/lib/modules-load.d/gatelet.conf
	$(INSTALL) -D -m 0644 $(GATELET_HOOKS_DIR)/sysctl.d/60-gatelet.conf \
		$(TARGET_DIR)/usr/lib/sysctl.d/60-gatelet.conf
	$(INSTALL) -D -m 0644 $(GATELET_HOOKS_DIR)/nftables/gatelet.nft \
		$(TARGET_DIR)/etc/nftables.d/gatelet.nft
	$(INSTALL) -d -m 0750 $(TARGET_DIR)/etc/gatelet
endef

define GATELET_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(@D)/systemd/gatelet-agent.service \
		$(TARGET_DIR)/usr/lib/systemd/system/gatelet-agent.service
	$(INSTALL) -D -m 0644 $(@D)/systemd/gatelet-companion.service \
		$(TARGET_DIR)/usr/lib/systemd/system/gatelet-companion.service
	$(INSTALL) -D -m 0644 $(@D)/systemd/gatelet-update.service \
		$(TARGET_DIR)/usr/lib/systemd/system/gatelet-update.service
	$(INSTALL) -D -m 0644 $(@D)/systemd/gatelet-update.path \
		$(TARGET_DIR)/usr/lib/systemd/system/gatelet-update.path
	$(INSTALL) -D -m 0644 $(@D)/systemd/gatelet.sysusers.conf \
		$(TARGET_DIR)/usr/lib/sysusers.d/gatelet.conf
	$(INSTALL) -D -m 0644 $(@D)/systemd/gatelet.tmpfiles.conf \
		$(TARGET_DIR)/usr/lib/tmpfiles.d/gatelet.conf
	$(INSTALL) -d -m 0755 $(TARGET_DIR)/usr/lib/systemd/system-preset
	printf 'enable gatelet-agent.service\nenable gatelet-companion.service\nenable gatelet-update.path\nenable gatelet-update.service\n' > \
		$(TARGET_DIR)/usr/lib/systemd/system-preset/80-gatelet.preset
	$(GATELET_INSTALL_NFTABLES_UNIT)
endef

# Buildroot's nftables package only has a SysV script: on systemd, this unit loads the rules.
ifeq ($(BR2_PACKAGE_NFTABLES),y)
define GATELET_INSTALL_NFTABLES_UNIT
	$(INSTALL) -D -m 0644 $(GATELET_PKGDIR)/gatelet-nftables.service \
		$(TARGET_DIR)/usr/lib/systemd/system/gatelet-nftables.service
	printf 'enable gatelet-nftables.service\n' >> \
		$(TARGET_DIR)/usr/lib/systemd/system-preset/80-gatelet.preset
endef
endif

ifeq ($(GATELET_PREBUILT_DIR),)
$(eval $(cargo-package))
else
$(eval $(generic-package))
endif
