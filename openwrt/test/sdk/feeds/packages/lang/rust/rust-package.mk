# Test stand-in for the packages feed's lang/rust/rust-package.mk and rust-values.mk
# (openwrt/check.sh): the variables openwrt/gatelet/Makefile uses, with the feed's shapes (a target
# triple, RUSTFLAGS from CARGO_RUSTFLAGS with -crt-static, CARGO_PROFILE_RELEASE_* defaults).
RUSTC_TARGET_ARCH:=$(OPENWRT_TEST_TRIPLE)
CARGO_HOME:=$(TOPDIR)/cargo-home
CARGO_RUSTFLAGS+=-Ctarget-feature=-crt-static
CARGO_PKG_CONFIG_VARS= \
	CARGO_BUILD_TARGET=$(RUSTC_TARGET_ARCH) \
	CARGO_HOME=$(CARGO_HOME) \
	CARGO_PROFILE_RELEASE_LTO=true \
	CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
	CARGO_PROFILE_RELEASE_PANIC=unwind \
	CARGO_TARGET_$(subst -,_,$(shell echo '$(RUSTC_TARGET_ARCH)' | tr a-z A-Z))_LINKER=$(TARGET_CC_NOCACHE) \
	RUSTFLAGS="$(CARGO_RUSTFLAGS)"
