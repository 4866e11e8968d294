-- Database trade_history: balance, order and deal history, written by matchengine, read by
-- readhistory.  Each template is copied into 100 shards <name>_0 .. <name>_99 by
-- trade_history_shards.sql, run after this file.

-- balance.history filters on `business`: utf8mb4_unicode_520_ci tells characters of four
-- bytes apart, where utf8mb4_general_ci weighs them all alike; case aside, as the original's
-- utf8_general_ci.
CREATE TABLE IF NOT EXISTS `balance_history_example` (
    `id`            BIGINT UNSIGNED NOT NULL PRIMARY KEY AUTO_INCREMENT,
    `time`          DOUBLE NOT NULL,
    `user_id`       INT UNSIGNED NOT NULL,
    `asset`         VARCHAR(30) NOT NULL,
    `business`      VARCHAR(30) NOT NULL,
    `change`        DECIMAL(30,8) NOT NULL,
    `balance`       DECIMAL(30,16) NOT NULL,
    `detail`        TEXT NOT NULL,
    INDEX `idx_user_asset` (`user_id`, `asset`),
    INDEX `idx_user_asset_business` (`user_id`, `asset`, `business`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

CREATE TABLE IF NOT EXISTS `order_history_example` (
    `id`            BIGINT UNSIGNED NOT NULL PRIMARY KEY,
    `create_time`   DOUBLE NOT NULL,
    `finish_time`   DOUBLE NOT NULL,
    `user_id`       INT UNSIGNED NOT NULL,
    `market`        VARCHAR(30) NOT NULL,
    `source`        VARCHAR(30) NOT NULL,
    `t`             TINYINT UNSIGNED NOT NULL,
    `side`          TINYINT UNSIGNED NOT NULL,
    `price`         DECIMAL(30,8) NOT NULL,
    `amount`        DECIMAL(30,8) NOT NULL,
    `taker_fee`     DECIMAL(30,4) NOT NULL,
    `maker_fee`     DECIMAL(30,4) NOT NULL,
    `deal_stock`    DECIMAL(30,8) NOT NULL,
    `deal_money`    DECIMAL(30,16) NOT NULL,
    `deal_fee`      DECIMAL(30,16) NOT NULL,
    INDEX `idx_user_market` (`user_id`, `market`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `order_detail_example` LIKE `order_history_example`;

CREATE TABLE IF NOT EXISTS `deal_history_example` (
    `id`            BIGINT UNSIGNED NOT NULL PRIMARY KEY AUTO_INCREMENT,
    `time`          DOUBLE NOT NULL,
    `user_id`       INT UNSIGNED NOT NULL,
    `deal_id`       BIGINT UNSIGNED NOT NULL,
    `order_id`      BIGINT UNSIGNED NOT NULL,
    `deal_order_id` BIGINT UNSIGNED NOT NULL,
    `role`          TINYINT UNSIGNED NOT NULL,
    `price`         DECIMAL(30,8) NOT NULL,
    `amount`        DECIMAL(30,8) NOT NULL,
    `deal`          DECIMAL(30,16) NOT NULL,
    `fee`           DECIMAL(30,16) NOT NULL,
    `deal_fee`      DECIMAL(30,16) NOT NULL,
    INDEX `idx_order_id` (`order_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `user_deal_history_example` (
    `id`            BIGINT UNSIGNED NOT NULL PRIMARY KEY AUTO_INCREMENT,
    `time`          DOUBLE NOT NULL,
    `user_id`       INT UNSIGNED NOT NULL,
    `market`        VARCHAR(30) NOT NULL,
    `deal_id`       BIGINT UNSIGNED NOT NULL,
    `order_id`      BIGINT UNSIGNED NOT NULL,
    `deal_order_id` BIGINT UNSIGNED NOT NULL,
    `side`          TINYINT UNSIGNED NOT NULL,
    `role`          TINYINT UNSIGNED NOT NULL,
    `price`         DECIMAL(30,8) NOT NULL,
    `amount`        DECIMAL(30,8) NOT NULL,
    `deal`          DECIMAL(30,16) NOT NULL,
    `fee`           DECIMAL(30,16) NOT NULL,
    `deal_fee`      DECIMAL(30,16) NOT NULL,
    INDEX `idx_user_market` (`user_id`, `market`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- How far the matchengine's writer has written, by operation id: per lane ("history",
-- "messages") and per table shard ("balance_history_7"); see matchengine/writer.py.
CREATE TABLE IF NOT EXISTS `history_position` (
    `name`          VARCHAR(64) NOT NULL PRIMARY KEY,
    `oper_id`       BIGINT UNSIGNED NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
